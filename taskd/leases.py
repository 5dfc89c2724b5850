"""Leases in Redis: a key that names its owner, taken, renewed and released only by that owner.

Jobs hold one while a worker runs them, the active bridge holds one per data root.
"""

from __future__ import annotations

TAKE_OR_KEEP = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
"""Take the lease if it is free, keep it if it is ours (taken back after Redis lost it), never
take another owner's. KEYS[1] the lease, ARGV[1] the owner token, ARGV[2] the TTL in seconds."""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Drop the lease only if it is still ours."""
