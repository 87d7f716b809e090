SELECT contact_email FROM contacts
