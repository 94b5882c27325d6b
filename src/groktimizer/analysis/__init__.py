"""Reading finished runs: statistics, tables, figures and the fair comparison."""
