COPY customers TO '/tmp/x'
