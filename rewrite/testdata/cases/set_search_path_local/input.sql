SET LOCAL search_path = "$user", public
