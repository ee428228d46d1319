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

    from demo.models import TINY, hub_offline

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("parity_lab").setLevel(logging.INFO)  # which model loaded, or why it fell back
    # huggingface_hub prints through its own handler, which core.loader quiets for a download it has given up on
    # (its retries go on in the background): not again through ours, which would print every "Retrying in 8s".
    logging.getLogger("huggingface_hub").propagate = False
    demo.model_cache.prefetch(args.model)  # start the default model's download now, in the background
    if hub_offline():
        demo.model_cache.prefetch(TINY)  # the page's fallback, ready for the first visitor
    demo.queue(**QUEUE).launch(server_name=args.host, server_port=args.port, **launch_kwargs())
