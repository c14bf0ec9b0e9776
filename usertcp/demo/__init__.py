"""`usertcp demo`: one TCP connection between Linux and usertcp, drawn packet by packet.

A plain kernel socket and a usertcp stack on a TUN device talk in a private network
namespace; every packet is a row of a ladder with both ends' real states after it (the
kernel's from /proc/net/tcp, usertcp's from its engine). Scenarios (`--list`) show a
normal close, a lost final ACK, either side closing first, a simultaneous close, a
refused connection, a SYN retry and a half-close.

- `cli`: the command outside the namespace (checks, namespace, clean-up);
- `story`: the part inside the namespace that plays and tells one scenario;
- `scenarios`: each scenario's steps, faults and explanation;
- `timeline`: the live ladder (observer rows with the real states, notes, in order);
- `faults`: deterministic drop and hold middlewares; `pcap`: `--pcap FILE`.
"""

from .cli import list_scenarios, run_demo
from .scenarios import SCENARIOS

__all__ = ["SCENARIOS", "list_scenarios", "run_demo"]
