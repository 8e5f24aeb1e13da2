"""Use case: leave-one-rule-out and k-fold evaluation of a recipe beside a baseline."""
