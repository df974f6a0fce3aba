import sys

from lora_explorer.cli import main

sys.exit(main())
