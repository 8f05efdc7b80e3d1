"""What is allowed: value and range checks every entry point shares (checks), the compatibility
rules between features and families (compat), and the support matrix derived from both and from
the family registry (feature_matrix)."""
