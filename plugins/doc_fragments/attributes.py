# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # What the module attributes mean (the convention of community.general and ansible.builtin).
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode, reporting what would change without changing it.
  diff_mode:
    description: Shows what changed (or would change, in check mode) when run with C(--diff).
  platform:
    description: Where the module runs and what it acts on.
"""

    # Modules that talk to the Kubernetes API from the host they run on (usually the controller).
    KUBERNETES = r"""
options: {}
attributes:
  platform:
    support: full
    platforms: posix
    details:
      - Runs on any POSIX host with the C(gpufleet) and C(kubernetes) Python packages and acts on a
        Kubernetes API server; nothing is done on the managed node itself.
"""

    # Modules that only read.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This module only reads; check mode changes nothing about what it does.
  diff_mode:
    support: N/A
    details:
      - This module only reads.
"""
