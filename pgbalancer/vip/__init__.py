"""The floating virtual IP (delegate_ip): who holds it, and the commands that move it.

``rule`` is the pure ownership rule (DESIGN §4 invariant 3), ``commands`` expands the configured
if_up_cmd / if_down_cmd / arping_cmd templates (pure), ``executor`` runs them with trio and
``manager`` ties the rule to the consensus layer's view of leadership. Nothing here may import
pysyncobj (leadership arrives through ``consensus``'s interface) or the proxy.
"""
