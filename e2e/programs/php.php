<?php
$n = (int) trim(file_get_contents('e2e-input.txt'));
$line = sprintf('e2e php %d', $n * 2);
file_put_contents('e2e-php.txt', $line . "\n");
echo $line, "\n";
