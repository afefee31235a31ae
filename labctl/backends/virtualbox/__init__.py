"""The VirtualBox backend (VirtualBox 7, driven through VBoxManage).

So far the command layer only: :mod:`.vboxmanage` runs VBoxManage and translates its errors,
:mod:`.output` parses what it prints. The backend proper comes with the redesigned interface.
"""
