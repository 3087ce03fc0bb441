"""Flax experiment suite reproducing super-convergence (Smith & Topin) on CIFAR."""
