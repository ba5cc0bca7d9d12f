"""Curvature and loss landscapes: Hessian-vector products, eigen-solvers, spectral densities, traces,
Park & Kim's max-eigenvalue spectra and filter-normalised landscapes (see the README)."""
