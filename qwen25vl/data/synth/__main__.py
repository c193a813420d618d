import sys

from qwen25vl.data.synth.cli import main

sys.exit(main(["synth", *sys.argv[1:]]))
