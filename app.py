"""GPT-2 Parity Lab: `python app.py [--model gpt2] [--host 127.0.0.1] [--port 7860] [--bpe-dir DIR]
[--yours FILE.py:NAME [--yours-step FILE.py:FUNC] [--yours-layers blocks=PATH,final_norm=PATH]]`.
Installed, the same is `gpt2-parity-app` (demo/app.py)."""

import sys

from demo.app import build, serve

args, demo = build(sys.argv[1:] if __name__ == "__main__" else [])

if __name__ == "__main__":
    serve(args, demo)
