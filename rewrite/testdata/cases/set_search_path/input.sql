SET search_path TO crm, public
