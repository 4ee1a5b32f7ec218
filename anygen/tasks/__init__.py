"""Tasks: the sequence layouts shared by training and inference (`layouts`), encoding with a
code cache (`encoder`) and the protocols worlds implement (`world`)."""
