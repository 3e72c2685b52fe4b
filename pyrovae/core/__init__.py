"""The core: what every other layer of pyrovae builds on, and which imports nothing else of it.

- :mod:`.programs`: what pyrovae asks of a Pyro model and guide (the data plate, capabilities,
  the check before any work) and how it calls them (:func:`~.programs.bind`);
- :mod:`.contract`: every hook a model, guide or per-point family may declare, with its default;
- :mod:`.vae`: a model and a guide in one module;
- :mod:`.traces`: per-point log weights and ELBOs from Pyro traces, the one place they are read;
- :mod:`.noise`: draws seeded per (site, particle, row), and torch's generators forked and seeded;
- :mod:`.nets`: the MLPs inside models and guides;
- :mod:`.distributed`: torch.distributed as torchrun sets it up;
- :mod:`.errors`, :mod:`.interrupts`, :mod:`.files`, :mod:`.heap`, :mod:`.progress`: user-facing
  errors, signals, atomic files, the allocator's settings and progress bars.
"""
