"""The supply-chain firewall: versions withheld from every answer (quarantine of young
upstream versions, blocks by admins and advisories).

rules (pure: ``Block``, ranges, ``hidden_versions``), blocks (``BlockList``, the
blocks in the store).
"""
