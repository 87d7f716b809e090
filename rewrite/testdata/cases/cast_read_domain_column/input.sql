SELECT v FROM checked
