"""Sample quality metrics; every score comes with a true-vs-true baseline at the same n."""
