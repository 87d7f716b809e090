SELECT crm.helper(1)
