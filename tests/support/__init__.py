"""What the tests share and are not tests themselves: tiny models, reference implementations, engines, live
servers, the browser. Test modules import from here (never from another test module); fixtures every folder
uses are in tests/conftest.py."""
