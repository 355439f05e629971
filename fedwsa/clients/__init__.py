"""The client side: a node's ClientApp, its cached data, and the trainers.

OpenMP threads sleep instead of spinning when they wait (``OMP_WAIT_POLICY=PASSIVE``) in node
processes, unless the user set a policy. A node shares its CPUs with Ray's own processes, the
ServerApp and other nodes; spinning threads of a multi-threaded torch op then burn the time
slices their partner thread needs, and on a busy 2-core machine we measured a cohort taking
42 s instead of 5 s with 2 torch threads (10x), while with this setting 2 threads ran as fast as
1. It is set here, before anything imports torch in a Ray actor (importing
``fedwsa.clients.client_app`` runs this first), and Ray actors started later by this process
inherit it. It has no effect in a process that had already imported torch.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
