"""``python -m modelfleet.agent``: see :mod:`modelfleet.agent._entry`."""

import sys

from modelfleet.agent._entry import main

sys.exit(main())
