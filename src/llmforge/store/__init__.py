"""The workspace's ``models/`` folder: the registry, the files of its models, and
changing both all or nothing.
"""
