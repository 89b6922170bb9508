"""``python -m llm_circuit_breaker``."""

import sys

from llm_circuit_breaker._cli import main

sys.exit(main())
