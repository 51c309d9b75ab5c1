"""Tables, plots and statistics built from finished runs."""
