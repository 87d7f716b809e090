SET standard_conforming_strings = on
