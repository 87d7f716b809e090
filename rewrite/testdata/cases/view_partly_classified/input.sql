SELECT * FROM contact_view
