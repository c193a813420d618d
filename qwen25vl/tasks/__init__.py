"""Grounding, document parsing, OCR, key information, markdown tables, video timestamps and agent actions: prompts,
tolerant parsers, coordinate maps and pictures (pure functions), plus `ground`, `parse_document`, `find_in_video`
and `act`, which run a loaded model (`qwen25vl.load(...)`) and return results in the caller's own pixels and
seconds."""

from qwen25vl.tasks.agent import (Action, ActionError, action_from_call, agent_system_prompt, agent_user_prompt,
                                  parse_actions, parse_tool_calls)
from qwen25vl.tasks.agent_schema import computer_use_function, mobile_use_function, tools_system_prompt
from qwen25vl.tasks.coords import Frame, as_frame, box_iou, iou_matrix, match_boxes, resized_size_for
from qwen25vl.tasks.documents import Block, Cell, Document, parse_qwenvl_html
from qwen25vl.tasks.draw import draw_actions, draw_groundings, draw_layout
from qwen25vl.tasks.grounding import (Grounding, GroundingResult, format_grounding, grounding_prompt,
                                      parse_grounding, to_resized)
from qwen25vl.tasks.ocr import KeyInfo, OcrText, key_info_prompt, parse_key_info, parse_ocr
from qwen25vl.tasks.tables import MarkdownTable, parse_markdown_table, parse_markdown_tables
from qwen25vl.tasks.run import AgentStep, VideoAnswer, act, find_in_video, ground, parse_document
from qwen25vl.tasks.video_time import (EventSpan, format_timestamp, parse_event_spans, parse_timestamp,
                                       temporal_iou, video_grounding_prompt)

__all__ = [
    "Action", "ActionError", "AgentStep", "Block", "Cell", "Document", "EventSpan", "Frame", "Grounding",
    "GroundingResult", "KeyInfo", "MarkdownTable", "OcrText", "VideoAnswer", "act", "action_from_call",
    "agent_system_prompt", "agent_user_prompt", "as_frame", "box_iou", "computer_use_function", "draw_actions",
    "draw_groundings", "draw_layout", "find_in_video", "format_grounding", "format_timestamp", "ground",
    "grounding_prompt", "iou_matrix", "key_info_prompt", "match_boxes", "mobile_use_function", "parse_actions",
    "parse_document", "parse_event_spans", "parse_grounding", "parse_key_info", "parse_markdown_table",
    "parse_markdown_tables", "parse_ocr", "parse_qwenvl_html", "parse_timestamp", "parse_tool_calls",
    "resized_size_for", "temporal_iou", "to_resized", "tools_system_prompt", "video_grounding_prompt",
]
