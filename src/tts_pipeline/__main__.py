"""`python -m tts_pipeline ...` is the same as the `tts-pipeline` command."""

import sys

from .cli import main

sys.exit(main())
