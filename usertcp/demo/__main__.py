"""`python -m usertcp.demo --inner ...`: the part of `usertcp demo` inside its namespace."""

import sys

from .story import inner_main

if "--inner" not in sys.argv[1:]:
    sys.exit("usertcp demo: run it as `usertcp demo`; this module's own entry point is for "
             "the part inside the network namespace")
sys.exit(inner_main(sys.argv[1:]))
