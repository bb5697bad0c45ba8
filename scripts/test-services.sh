#!/usr/bin/env bash
# Installs the system services the test suite talks to (none needed yet).
# Later: PostgreSQL, Redis and Chromium from Debian's packages.
exit 0
