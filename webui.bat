@echo off
rem Start the web UI on Windows. Settings (PYTHON, VENV_DIR, COMMANDLINE_ARGS, TORCH_COMMAND) live in
rem webui-user.bat; run that file, not this one. First run: makes a venv beside these files and
rem installs torch (the CUDA build when an NVIDIA driver is present) and requirements.txt.

setlocal
cd /d "%~dp0"
if exist "%~dp0webui.settings.bat" call "%~dp0webui.settings.bat"

if not defined PYTHON set "PYTHON=python"
if not defined VENV_DIR set "VENV_DIR=%~dp0venv"
if "%VENV_DIR%"=="-" set "SKIP_VENV=1"

%PYTHON% -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)" >nul 2>&1
if %ERRORLEVEL% neq 0 goto :no_python

if "%SKIP_VENV%"=="1" goto :launch
if exist "%VENV_DIR%\Scripts\python.exe" goto :use_venv
echo Creating venv in %VENV_DIR%
%PYTHON% -m venv "%VENV_DIR%"
if %ERRORLEVEL% neq 0 goto :venv_failed

:use_venv
set PYTHON="%VENV_DIR%\Scripts\python.exe"

:launch
%PYTHON% launch.py %*
if %ERRORLEVEL% neq 0 goto :failed
exit /b 0

:no_python
echo.
echo ERROR: Python 3.10 or newer was not found as "%PYTHON%".
echo Install Python 3.11 from https://www.python.org (tick "Add python.exe to PATH"),
echo or set PYTHON in webui-user.bat to the full path of python.exe.
goto :failed

:venv_failed
echo.
echo ERROR: could not create a venv in %VENV_DIR% with %PYTHON%.
echo Delete that folder if it exists and start again.
goto :failed

:failed
echo.
echo The web UI stopped with an error; the messages above say why.
pause
exit /b 1
