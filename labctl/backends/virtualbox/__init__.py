"""The VirtualBox backend (VirtualBox 7, driven through VBoxManage): the only package that runs VBoxManage.

:mod:`.vboxmanage` runs it and translates its errors, :mod:`.output` parses what it prints,
:mod:`.definition` says what the plan is in VirtualBox terms (pure), and :mod:`.backend` applies it.
"""

from labctl.backends.virtualbox.backend import VirtualBoxBackend

__all__ = ["VirtualBoxBackend"]
