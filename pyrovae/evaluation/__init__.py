"""Estimators of log p(x) and their diagnostics.

- :mod:`.settings`: every estimator's settings, stated once (default, help, check);
- :mod:`.estimator`: what the estimators share: an object with its settings, one result type;
- :mod:`.driver`: batches of points, resumable and shared out to the processes of a distributed run;
- :mod:`.proposals`: what importance sampling draws from and AIS starts at;
- :mod:`.importance`: importance sampling (L_K, ESS, PSIS k-hat);
- :mod:`.annealing`, :mod:`.chains`, :mod:`.ais`: AIS with HMC in PyTorch, its chains for a Pyro
  model and guide, and the AIS and BDMC estimators;
- :mod:`.kernels`, :mod:`.diagnostics`: the fused log densities, and ESS, k-hat, active units.
"""
