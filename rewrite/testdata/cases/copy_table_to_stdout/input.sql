COPY customers TO STDOUT
