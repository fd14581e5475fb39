"""`python -m ai --config FILE`: run the AI gateway."""

from ai.server import main

main()
