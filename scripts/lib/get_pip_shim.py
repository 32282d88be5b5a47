"""Stand-in for the get-pip.py bootstrap that ansible-test downloads.

ansible-test fetches get-pip.py from a host this machine cannot reach; it reads
a cached copy first. This copy installs pip with ensurepip, then the version
ansible-test asks for from PyPI (reachable here).
"""

import os
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
version = os.environ.get("GET_PIP_VERSION", "").strip() or "24.2"
subprocess.check_call(
    [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", f"pip=={version}"]
)
