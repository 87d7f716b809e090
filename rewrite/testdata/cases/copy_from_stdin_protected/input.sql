COPY customers FROM STDIN
