"""Reports over the spend ledger: what AI cost, who spent it, what routing saved.

* :mod:`thrifty.reports.query` -- the report itself (totals, groups, time series,
  leaderboard, budget burn-down) as plain data, fast on big ledgers thanks to
  :mod:`thrifty.reports.rollup` (daily pre-aggregates kept in the same database);
* :mod:`thrifty.reports.render` and :mod:`thrifty.reports.charts` -- rich tables,
  CSV, JSON and matplotlib PNGs;
* :mod:`thrifty.reports.simulate` -- what-if replay of past traffic under another
  routing profile, knob, price list or policy, without calling any provider;
* :mod:`thrifty.reports.feedback` -- ``POST /v1/feedback``, stored beside the ledger;
* :mod:`thrifty.reports.web` -- the admin dashboard the gateway serves at ``/ui``.
"""
