"""Tables: read, clean and split the products and images tables."""
