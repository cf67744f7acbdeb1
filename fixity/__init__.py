"""Fixity auditors (issue 4): scheduled re-verification of every copy, and repair.

Modules, in the order work flows through them:

* ``schedule``: ``next_audit_at`` spread evenly over each tier's interval; leased claims.
* ``checks``: one check of one object at one level (light, stored, deep).
* ``audit``: an audit pass (retry once on failure, unreachable is not damage, events).
* ``repair``: damaged or missing copies made whole from copies proven good now;
  ``rebuild`` for packs, ``manifests`` for version manifests (audit and repair).
* ``errors``: the package's exception tree.
* ``report`` / ``status``: one report per pass; per-tier proof of verification; metrics.
* ``loops`` / ``cli``: the worker loops and commands, plugged into ``archive`` by entry
  points (``permafrost.worker_loops``, ``permafrost.cli``) so that ``archive`` never
  imports this package.
"""
