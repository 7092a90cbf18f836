"""One run on several processes (branch-parallel): the process group, and the whole ensemble's state joined
from the processes' blocks of branches."""
