"""Sample objective for the hpo-cluster demo (scikit-learn on a bundled dataset)."""
