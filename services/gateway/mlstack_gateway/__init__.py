"""mlstack gateway: the public JSON API in front of the model server and the database."""
