"""GPT-2 Parity Lab: `python app.py [--model gpt2] [--host 127.0.0.1] [--port 7860] [--bpe-dir DIR]
[--yours FILE.py:NAME [--yours-step FILE.py:FUNC] [--yours-layers blocks=PATH,final_norm=PATH]]`."""

import sys

from demo import QUEUE, build_demo, launch_kwargs, parse_args
from demo.yours import load_or_exit as load_yours

args = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
mine = load_yours(args)  # `--yours FILE.py:NAME`: the user's own GPT-2, loaded from the command line only
demo = build_demo(model=args.model, bpe_dir=args.bpe_dir, max_models=args.max_models, mine=mine)

if __name__ == "__main__":
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("parity_lab").setLevel(logging.INFO)  # which model loaded, or why it fell back
    demo.model_cache.prefetch(args.model)  # start the default model's download now, in the background
    demo.queue(**QUEUE).launch(server_name=args.host, server_port=args.port, **launch_kwargs())
