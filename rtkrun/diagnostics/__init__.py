"""Regularity diagnostics of a map F: R^d -> R^d at a batch of points (docs/science.md, the regularity bound).

Every function takes a batched map ``F`` whose rows are independent (F(z)[i] depends only on
z[i]), so one jvp/vjp of the batch serves every sample: the batch Jacobian is block diagonal.
Exact paths (float64, jacrev/hessian) are for small d and for validating the matrix-free ones.
"""
