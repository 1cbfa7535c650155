"""Fence agents: making sure a failed host is really off before any of its VMs runs elsewhere.

Each agent answers three questions about one host: a second opinion (can the agent's own path
reach it, where flexvm's health checks cannot?), power it off, and confirm that it is off.
``agents.fencer_for(host)`` gives a host's agent from what ``host update --fence-agent`` stored.
"""
