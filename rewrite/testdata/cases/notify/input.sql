NOTIFY channel, 'hello'
