"""OpenAI-compatible HTTP server with continuous batching.

From the command line: `qwen25vl serve --model DIR [--api-key KEY] [--local-root DIR] [--max-batch 32]`.
In Python (tests, notebooks):

```
vlm = qwen25vl.load(path)
app = create_app(vlm, ServeSettings(model_name="qwen2.5-vl"))     # qwen25vl.serve.app / .settings
with BackgroundServer(app) as srv:                                 # qwen25vl.serve.background
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="-")
```
Modules: `app` (routes, SSE, errors), `schemas` (request/response bodies), `messages` (OpenAI content parts -> the
processor's, limits), `fetch` (safe URL / path loading), `scheduler` + `rows` (the batching worker), `json_mode`
(JSON-object constrained decoding), `settings`, `cli`.
"""
