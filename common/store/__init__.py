"""Storage: the SQL schema, the repository functions every stage uses, and the migrations."""
